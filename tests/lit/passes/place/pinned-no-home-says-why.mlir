// RUN: not gimletc opt %s --pass-pipeline='place{target="%inputs/matmul-only-acc.cluster" pins="gml.softmax=acc0"}' 2>&1 | filecheck %s

// BUG (message): the error for a pin onto a device that cannot run the op
// says only "pinned to acc0, which cannot run it"; the unpinned path already
// knows the reason (`acc0 does not support gml.softmax`, or a dtype), and
// docs/placement.md promises the op with no home "(and why)".
// Expected: the reason, as the unpinned path words it.

func.func @main(%x: tensor<8x16xf32>, %w: tensor<16x16xf32>) -> tensor<8x16xf32> {
  %0 = gml.matmul %x, %w : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>
  %1 = gml.softmax %0 dim 1 : tensor<8x16xf32> loc("attn.softmax"("model.py":7:0))
  func.return %1 : tensor<8x16xf32>
}

// CHECK:     gimletc: error: model.py:7: gml.softmax has no device to run on: {{.*}}acc0 does not support gml.softmax
// CHECK-NOT: builtin.module
