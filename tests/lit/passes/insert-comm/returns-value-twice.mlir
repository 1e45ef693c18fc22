// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm 2>&1 | filecheck %s

// A gpu0 value the function returns twice crosses to the host once: one
// channel, one comm.recv in the host program, its value returned twice.
// (Regression: the return path used to add a second comm.recv on the same
// channel, which the transfer check rejects.)

builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
    %0 = gml.relu %x {gml.device = "gpu0"} : tensor<4xf32>
    func.return %0, %0 : tensor<4xf32>, tensor<4xf32>
  }
}

// CHECK-NOT:  error
// CHECK:      comm.send %0 to "cpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT: gml.yield
// CHECK-NEXT: }
// CHECK-NEXT: %0 = comm.recv from "gpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT: func.return %0, %0 : tensor<4xf32>, tensor<4xf32>
