// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm | filecheck %s

// A cross-device edge becomes a comm.send at the end of the producing segment
// and a comm.recv at the start of the consuming one, on one channel and with
// the transport of the route (h100+cpu: PCIe). The consumer no longer takes
// the value as an operand, and a segment result nobody reads is dropped. The
// gpu0 result the function returns travels back to the host (cpu0) the same way.

builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %0 = gml.neg %x {gml.device = "cpu0"} : tensor<4xf32>
    %1 = gml.relu %0 {gml.device = "gpu0"} : tensor<4xf32>
    %2 = gml.exp %1 {gml.device = "gpu0"} : tensor<4xf32>
    func.return %2 : tensor<4xf32>
  }
}

// CHECK-LABEL: func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    gml.segment "cpu0"(%x) : (tensor<4xf32>) -> () {
// CHECK-NEXT:    ^bb0(%x_1: tensor<4xf32>):
// CHECK-NEXT:      %0 = gml.neg %x_1 : tensor<4xf32>
// CHECK-NEXT:      comm.send %0 to "gpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      gml.yield
// CHECK-NEXT:    }
// CHECK-NEXT:    gml.segment "gpu0"() : () -> () {
// CHECK-NEXT:      %0 = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      %1 = gml.relu %0 : tensor<4xf32>
// CHECK-NEXT:      %2 = gml.exp %1 : tensor<4xf32>
// CHECK-NEXT:      comm.send %2 to "cpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      gml.yield
// CHECK-NEXT:    }
// CHECK-NEXT:    %0 = comm.recv from "gpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT:    func.return %0 : tensor<4xf32>
// CHECK-NEXT:  }
