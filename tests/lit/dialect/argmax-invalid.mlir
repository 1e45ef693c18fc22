// RUN: not gimletc opt %s --split-input-file 2>&1 | filecheck %s

// gml.argmax's rules: the result is i64 with the reduced shape; an empty dim has no
// maximum.

func.func @not_i64(%x: tensor<2x3xf32>) {
  %0 = gml.argmax %x dim 1 : tensor<2x3xf32> to tensor<2xi32>
  func.return
}
// CHECK:      gimletc: error: gml.argmax: result element type i32 does not match expected i64

// -----

func.func @empty_dim(%x: tensor<2x0xf32>) {
  %0 = gml.argmax %x dim 1 : tensor<2x0xf32> to tensor<2xi64>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.argmax: cannot take the argmax of an empty dim 1

// -----

func.func @dim_out_of_range(%x: tensor<2x3xf32>) {
  %0 = gml.argmin %x dim 2 : tensor<2x3xf32> to tensor<2xi64>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.argmin: dimension 2 out of range for rank 2
