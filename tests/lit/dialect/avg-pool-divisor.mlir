// RUN: gimletc opt %s | filecheck %s

// gml.avg_pool2d's divisor: padding not counted (count_include_pad false) or a fixed
// divisor_override; torch's default (padding counted) is not printed.

func.func @divisors(%x: tensor<1x6x8x8xf32>) {
  %0 = gml.avg_pool2d %x kernel [3, 3] stride [2, 2] padding [1, 1] count_include_pad false : tensor<1x6x8x8xf32> to tensor<1x6x4x4xf32>
  %1 = gml.avg_pool2d %x kernel [3, 3] stride [2, 2] padding [1, 1] divisor 4 : tensor<1x6x8x8xf32> to tensor<1x6x4x4xf32>
  %2 = gml.avg_pool2d %x kernel [3, 3] stride [2, 2] padding [1, 1] count_include_pad true : tensor<1x6x8x8xf32> to tensor<1x6x4x4xf32>
  func.return
}
// CHECK:      %0 = gml.avg_pool2d %x kernel [3, 3] stride [2, 2] padding [1, 1] count_include_pad false : tensor<1x6x8x8xf32> to tensor<1x6x4x4xf32>
// CHECK-NEXT: %1 = gml.avg_pool2d %x kernel [3, 3] stride [2, 2] padding [1, 1] divisor 4 : tensor<1x6x8x8xf32> to tensor<1x6x4x4xf32>
// CHECK-NEXT: %2 = gml.avg_pool2d %x kernel [3, 3] stride [2, 2] padding [1, 1] : tensor<1x6x8x8xf32> to tensor<1x6x4x4xf32>
