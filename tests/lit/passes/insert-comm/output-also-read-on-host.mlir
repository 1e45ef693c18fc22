// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm 2>&1 | filecheck %s

// %0 (gpu0) is both returned and read by a cpu0 (host) segment. It crosses to
// the host once, received in that segment, which yields the received value
// for func.return. (Regression: the return path used to add a second comm.recv
// on the same channel in the function body, which the transfer check rejects.)

builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
    %0 = gml.relu %x {gml.device = "gpu0"} : tensor<4xf32>
    %1 = gml.neg %0 {gml.device = "cpu0"} : tensor<4xf32>
    func.return %0, %1 : tensor<4xf32>, tensor<4xf32>
  }
}

// CHECK-NOT:   error
// CHECK-LABEL: gml.segment "gpu0"() : () -> () {
// CHECK:         comm.send %0 to "cpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK:       %0, %1 = gml.segment "cpu0"() : () -> (tensor<4xf32>, tensor<4xf32>) {
// CHECK-NEXT:    %2 = comm.recv from "gpu0" channel 1 via "pcie" : tensor<4xf32>
// CHECK-NEXT:    %3 = gml.neg %2 : tensor<4xf32>
// CHECK-NEXT:    gml.yield %3, %2 : tensor<4xf32>, tensor<4xf32>
// CHECK-NEXT:  }
// CHECK-NEXT:  func.return %1, %0 : tensor<4xf32>, tensor<4xf32>
// CHECK-NOT:   comm.recv
