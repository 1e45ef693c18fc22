// RUN: not gimletc opt %s --pass-pipeline='place{target="%inputs/matmul-only-acc.cluster" pins="gml.softmax=acc0"}' 2>&1 | filecheck %s

// acc0 in matmul-only-acc.cluster lists `ops = [gml.matmul, gml.add]`. Pinning
// the softmax there leaves it no device: a user error (exit 1) naming the op
// and its source line; nothing is printed.

func.func @main(%x: tensor<8x16xf32>, %w: tensor<16x16xf32>) -> tensor<8x16xf32> {
  %0 = gml.matmul %x, %w : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>
  %1 = gml.softmax %0 dim 1 : tensor<8x16xf32> loc("attn.softmax"("model.py":7:0))
  func.return %1 : tensor<8x16xf32>
}

// CHECK:     gimletc: error: model.py:7: gml.softmax has no device to run on: pinned to acc0, but acc0 does not support gml.softmax{{$}}
// CHECK-NOT: builtin.module
