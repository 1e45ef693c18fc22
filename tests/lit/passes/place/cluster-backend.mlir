// RUN: not gimletc opt %s --pass-pipeline='place{target="%inputs/tensorrt-gpu.cluster" pins="gml.exp=gpu0"}' 2>&1 | filecheck %s
// RUN: gimletc opt %s --pass-pipeline='place{target="%inputs/tensorrt-gpu.cluster" pins="gml.exp=gpu0" backends="nvidia=cuda"}' | filecheck %s --check-prefix=FLAG

// `backend = tensorrt` on gpu0 in the .cluster file narrows gpu0 to what TensorRT
// runs, as `--backend nvidia=tensorrt` does: an f64 op pinned there has no device,
// and the message says where the backend was chosen. `--backend nvidia=cuda` (the
// place pass's `backends`) wins over the file, and CUDA runs f64.

func.func @main(%x: tensor<4x16xf64>, %y: tensor<4x16xf32>) -> (tensor<4x16xf64>, tensor<4x16xf32>) {
  %0 = gml.exp %x : tensor<4x16xf64> loc("model.py":3:0)
  %1 = gml.exp %y : tensor<4x16xf32> loc("model.py":4:0)
  func.return %0, %1 : tensor<4x16xf64>, tensor<4x16xf32>
}

// CHECK:     gimletc: error: model.py:3: gml.exp has no device to run on: pinned to gpu0, but gpu0 does not support gml.exp on f64 with backend = tensorrt at {{.*}}tensorrt-gpu.cluster:3 (TensorRT 10.1: {{.*}})
// CHECK-NOT: builtin.module

// FLAG: gml.exp %x {gml.device = "gpu0"} : tensor<4x16xf64>
// FLAG: gml.exp %y {gml.device = "gpu0"} : tensor<4x16xf32>
