// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm | filecheck %s

// Inputs arrive at, and outputs return to, the host (cpu0, the cluster's first
// CPU). The function body is the host program: it sends %x to gpu0 before
// anything runs and receives gpu0's result just before func.return. Values the
// host itself reads or returns (%y, %1, and %x returned as is) need no transfer.

builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) {
    %0 = gml.relu %x {gml.device = "gpu0"} : tensor<4xf32>
    %1 = gml.neg %y {gml.device = "cpu0"} : tensor<4xf32>
    func.return %0, %1, %x : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
  }
}

// CHECK-LABEL: func.func @main(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) {
// CHECK-NEXT:    comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK-NEXT:    gml.segment "gpu0"() : () -> () {
// CHECK-NEXT:      %x_1 = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      %0 = gml.relu %x_1 : tensor<4xf32>
// CHECK-NEXT:      comm.send %0 to "cpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT:      gml.yield
// CHECK-NEXT:    }
// CHECK-NEXT:    %0 = gml.segment "cpu0"(%y) : (tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:    ^bb0(%y_1: tensor<4xf32>):
// CHECK-NEXT:      %1 = gml.neg %y_1 : tensor<4xf32>
// CHECK-NEXT:      gml.yield %1 : tensor<4xf32>
// CHECK-NEXT:    }
// CHECK-NEXT:    %1 = comm.recv from "gpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT:    func.return %1, %0, %x : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
// CHECK-NEXT:  }
