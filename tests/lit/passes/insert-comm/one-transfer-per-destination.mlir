// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm | filecheck %s

// %0 (cpu0) is read by two gpu0 segments and by gpu1. It crosses to each
// destination device once: channel 0 to gpu0, received in gpu0's first
// segment, which yields it to gpu0's second segment locally; channel 3 to gpu1.
// Both sends sit at the end of the producing segment.

builtin.module attributes {gml.target = "2xh100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %0 = gml.neg %x {gml.device = "cpu0"} : tensor<4xf32>
    %1 = gml.relu %0 {gml.device = "gpu0"} : tensor<4xf32>
    %2 = gml.exp %1 {gml.device = "cpu0"} : tensor<4xf32>
    %3 = gml.add %0, %2 {gml.device = "gpu0"} : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    %4 = gml.mul %0, %3 {gml.device = "gpu1"} : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    func.return %4 : tensor<4xf32>
  }
}

// CHECK-LABEL: func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    gml.segment "cpu0"(%x) : (tensor<4xf32>) -> () {
// CHECK-NEXT:    ^bb0(%x_1: tensor<4xf32>):
// CHECK-NEXT:      %0 = gml.neg %x_1 : tensor<4xf32>
// CHECK-NEXT:      comm.send %0 to "gpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      comm.send %0 to "gpu1" channel 3 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      gml.yield
// CHECK-NEXT:    }
// CHECK-NEXT:    %0 = gml.segment "gpu0"() : () -> tensor<4xf32> {
// CHECK-NEXT:      %1 = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      %2 = gml.relu %1 : tensor<4xf32>
// CHECK-NEXT:      comm.send %2 to "cpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      gml.yield %1 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    gml.segment "cpu0"() : () -> () {
// CHECK-NEXT:      %1 = comm.recv from "gpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      %2 = gml.exp %1 : tensor<4xf32>
// CHECK-NEXT:      comm.send %2 to "gpu0" channel 2 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      gml.yield
// CHECK-NEXT:    }
// CHECK-NEXT:    gml.segment "gpu0"(%0) : (tensor<4xf32>) -> () {
// CHECK-NEXT:    ^bb0(%1: tensor<4xf32>):
// CHECK-NEXT:      %2 = comm.recv from "cpu0" channel 2 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      %3 = gml.add %1, %2 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:      comm.send %3 to "gpu1" channel 4 via "nvlink" : tensor<4xf32>
// CHECK-NEXT:      gml.yield
// CHECK-NEXT:    }
// CHECK-NEXT:    gml.segment "gpu1"() : () -> () {
// CHECK-NEXT:      %1 = comm.recv from "gpu0" channel 4 via "nvlink" : tensor<4xf32>
// CHECK-NEXT:      %2 = comm.recv from "cpu0" channel 3 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      %3 = gml.mul %2, %1 : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:      comm.send %3 to "cpu0" channel 5 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      gml.yield
// CHECK-NEXT:    }
// CHECK-NEXT:    %1 = comm.recv from "gpu1" channel 5 via "pcie" : tensor<4xf32>
// CHECK-NEXT:    func.return %1 : tensor<4xf32>
