// RUN: not gimletc opt %s 2>&1 | filecheck %s

// BUG: a pooling stride of 0 is not rejected by the verifier; Pool2dOp.infer
// (dialects/gml.py) divides by it and gimletc crashes:
//   gimletc: internal error: ZeroDivisionError: integer division or modulo by zero
// Expected: a verifier error like gml.conv's "groups, stride and dilation must
// be positive". Once fixed, move this case into invalid.mlir (it lives apart
// because a crash aborts every later `// -----` chunk there).

func.func @pool_stride_zero(%x: tensor<1x3x8x8xf32>) {
  %0 = gml.max_pool2d %x kernel [2, 2] stride [0, 2] padding [0, 0] : tensor<1x3x8x8xf32> to tensor<1x3x4x4xf32>
  func.return
}
// CHECK:     gimletc: error: gml.max_pool2d: {{.*}}stride{{.*}} must be positive
// CHECK-NOT: internal error
