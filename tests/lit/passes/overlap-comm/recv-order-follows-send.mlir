// RUN: gimletc opt %s --pass-pipeline=outline-segments,insert-comm,overlap-comm | filecheck %s

// gpu0 sends %1 (channel 2) as soon as it exists and %3 (channel 1) after two more
// ops, so gpu1 posts its receive of channel 1 first: NCCL matches a pair's transfers
// in the order they are posted, not by channel.

builtin.module attributes {gml.target = "2xh100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %0 = gml.neg %x {gml.device = "gpu0"} : tensor<4xf32>
    %1 = gml.exp %0 {gml.device = "gpu0"} : tensor<4xf32>
    %2 = gml.relu %0 {gml.device = "gpu0"} : tensor<4xf32>
    %3 = gml.sqrt %2 {gml.device = "gpu0"} : tensor<4xf32>
    %4 = gml.add %3, %1 {gml.device = "gpu1"} : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    func.return %4 : tensor<4xf32>
  }
}

// CHECK:         gml.segment "gpu0"
// CHECK:           %[[EXP:.+]] = gml.exp
// CHECK-NEXT:      %{{.+}} = comm.isend %[[EXP]] to "gpu1" channel 2 via "nvlink"
// CHECK:           %[[SQRT:.+]] = gml.sqrt
// CHECK-NEXT:      %{{.+}} = comm.isend %[[SQRT]] to "gpu1" channel 1 via "nvlink"
// CHECK:         gml.segment "gpu1"
// CHECK-NEXT:      %{{.+}} = comm.irecv from "gpu0" channel 2 via "nvlink"
// CHECK-NEXT:      %{{.+}} = comm.irecv from "gpu0" channel 1 via "nvlink"
