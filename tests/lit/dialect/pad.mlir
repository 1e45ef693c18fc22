// RUN: gimletc opt %s | filecheck %s

// gml.pad (aten.constant_pad_nd): per-dim amounts before (low) and after (high);
// a negative amount crops. The result shape is size + low + high per dim.

func.func @pad(%x: tensor<2x3xf32>, %d: tensor<?x3xf32>) {
  %0 = gml.pad %x low [1, -1] high [0, 2] value 5.000000e-01 : tensor<2x3xf32> to tensor<3x4xf32>
  %1 = gml.pad %d low [0, 1] high [0, 1] value 0.0 : tensor<?x3xf32> to tensor<?x5xf32>
  func.return
}
// CHECK:      %0 = gml.pad %x low [1, -1] high [0, 2] value 5.000000e-01 : tensor<2x3xf32> to tensor<3x4xf32>
// CHECK-NEXT: %1 = gml.pad %d low [0, 1] high [0, 1] value 0.000000e+00 : tensor<?x3xf32> to tensor<?x5xf32>
