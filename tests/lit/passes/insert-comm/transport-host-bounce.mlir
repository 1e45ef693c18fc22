// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm | filecheck %s

// b200+mi300x+cpu: gpu0 (NVIDIA) and gpu1 (AMD) share no fabric, so a tensor
// between them bounces through the host CPU: transport "host_bounce" on both
// ends of the channel. Host <-> GPU transfers go over PCIe.

builtin.module attributes {gml.target = "b200+mi300x+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %0 = gml.relu %x {gml.device = "gpu0"} : tensor<4xf32>
    %1 = gml.neg %0 {gml.device = "gpu1"} : tensor<4xf32>
    func.return %1 : tensor<4xf32>
  }
}

// CHECK:      comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK:      gml.segment "gpu0"() : () -> () {
// CHECK:        comm.send %0 to "gpu1" channel 1 via "host_bounce" : tensor<4xf32>
// CHECK:      gml.segment "gpu1"() : () -> () {
// CHECK-NEXT:   %0 = comm.recv from "gpu0" channel 1 via "host_bounce" : tensor<4xf32>
// CHECK:        comm.send %1 to "cpu0" channel 2 via "pcie" : tensor<4xf32>
// CHECK:      comm.recv from "gpu1" channel 2 via "pcie" : tensor<4xf32>
