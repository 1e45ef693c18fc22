// RUN: not gimletc opt %s --split-input-file 2>&1 | filecheck %s

// gml.pad's shape rules: one amount per dim, and no dim cropped below zero.

func.func @wrong_count(%x: tensor<2x3xf32>) {
  %0 = gml.pad %x low [1] high [1] value 0.0 : tensor<2x3xf32> to tensor<4x3xf32>
  func.return
}
// CHECK:      gimletc: error: gml.pad: low and high need one amount per dim (2), got 1 and 1

// -----

func.func @cropped_away(%x: tensor<2x3xf32>) {
  %0 = gml.pad %x low [0, -2] high [0, -2] value 0.0 : tensor<2x3xf32> to tensor<2x0xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.pad: padding dim 1 of size 3 by -2, -2 leaves -1

// -----

func.func @wrong_result(%x: tensor<2x3xf32>) {
  %0 = gml.pad %x low [1, 1] high [1, 1] value 0.0 : tensor<2x3xf32> to tensor<4x4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: gml.pad: result shape 4x4 does not match expected 4x5
