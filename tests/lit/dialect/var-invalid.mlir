// RUN: not gimletc opt %s --split-input-file 2>&1 | filecheck %s

// gml.var takes floating-point inputs only, and reduces like gml.sum.

func.func @integer_input(%x: tensor<2x3xi64>) {
  %0 = gml.var %x [1] : tensor<2x3xi64> to tensor<2xi64>
  func.return
}
// CHECK:      gimletc: error: gml.var: variance needs a floating-point input

// -----

func.func @wrong_shape(%x: tensor<2x3xf32>) {
  %0 = gml.var %x [1] : tensor<2x3xf32> to tensor<3xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.var: result shape 3 does not match expected 2
