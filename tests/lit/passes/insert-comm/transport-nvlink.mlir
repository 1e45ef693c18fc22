// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm | filecheck %s

// 2xh100+cpu: the two H100s are linked by NVLink, so a tensor between them
// goes directly, transport "nvlink"; host <-> GPU transfers go over PCIe.

builtin.module attributes {gml.target = "2xh100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %0 = gml.relu %x {gml.device = "gpu0"} : tensor<4xf32>
    %1 = gml.neg %0 {gml.device = "gpu1"} : tensor<4xf32>
    func.return %1 : tensor<4xf32>
  }
}

// CHECK:      comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK:      gml.segment "gpu0"() : () -> () {
// CHECK:        comm.send %0 to "gpu1" channel 1 via "nvlink" : tensor<4xf32>
// CHECK:      gml.segment "gpu1"() : () -> () {
// CHECK-NEXT:   %0 = comm.recv from "gpu0" channel 1 via "nvlink" : tensor<4xf32>
// CHECK:        comm.send %1 to "cpu0" channel 2 via "pcie" : tensor<4xf32>
// CHECK:      comm.recv from "gpu1" channel 2 via "pcie" : tensor<4xf32>
