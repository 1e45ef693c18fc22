// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm,overlap-comm | filecheck %s

// Every blocking transfer becomes asynchronous: a comm.isend issued right
// after its value is produced (%1 goes out before exp runs; a host input at the
// start of the function body) with its comm.wait just before the end of the
// block; a comm.irecv posted at the start of the block with the comm.wait that
// yields the value just before its first use (%x before relu, the cpu0 value
// only before add, after relu and sqrt).

builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %0 = gml.neg %x {gml.device = "cpu0"} : tensor<4xf32>
    %1 = gml.exp %0 {gml.device = "cpu0"} : tensor<4xf32>
    %2 = gml.relu %x {gml.device = "gpu0"} : tensor<4xf32>
    %3 = gml.sqrt %2 {gml.device = "gpu0"} : tensor<4xf32>
    %4 = gml.add %3, %0 {gml.device = "gpu0"} : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    %5 = gml.mul %4, %1 {gml.device = "cpu0"} : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    func.return %5 : tensor<4xf32>
  }
}

// CHECK-LABEL: func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    %0 = comm.isend %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK-NEXT:    %1 = gml.segment "cpu0"(%x) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%x_1: tensor<4xf32>):
// CHECK-NEXT:      %2 = gml.neg %x_1 : tensor<4xf32>
// CHECK-NEXT:      %3 = comm.isend %2 to "gpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      %4 = gml.exp %2 : tensor<4xf32>
// CHECK-NEXT:      comm.wait %3
// CHECK-NEXT:      gml.yield %4 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    gml.segment "gpu0"() : () -> () {
// CHECK-NEXT:      %2 = comm.irecv from "cpu0" channel 0 via "pcie"
// CHECK-NEXT:      %3 = comm.irecv from "cpu0" channel 1 via "pcie"
// CHECK-NEXT:      %x_1 = comm.wait %2 : tensor<4xf32>
// CHECK-NEXT:      %4 = gml.relu %x_1 : tensor<4xf32>
// CHECK-NEXT:      %5 = gml.sqrt %4 : tensor<4xf32>
// CHECK-NEXT:      %6 = comm.wait %3 : tensor<4xf32>
// CHECK-NEXT:      %7 = gml.add %5, %6 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:      %8 = comm.isend %7 to "cpu0" channel 2 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      comm.wait %8
// CHECK-NEXT:      gml.yield
// CHECK-NEXT:    }
// CHECK-NEXT:    %2 = gml.segment "cpu0"(%1) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%3: tensor<4xf32>):
// CHECK-NEXT:      %4 = comm.irecv from "gpu0" channel 2 via "pcie"
// CHECK-NEXT:      %5 = comm.wait %4 : tensor<4xf32>
// CHECK-NEXT:      %6 = gml.mul %5, %3 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:      gml.yield %6 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    comm.wait %0
// CHECK-NEXT:    func.return %2 : tensor<4xf32>
// CHECK-NEXT:  }
// CHECK-NOT:   comm.send
// CHECK-NOT:   comm.recv
