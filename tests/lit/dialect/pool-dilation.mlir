// RUN: gimletc opt %s | filecheck %s

// gml.max_pool2d with dilated windows: a window spans dilation*(kernel-1)+1 inputs,
// so an 8x8 input, kernel 2, dilation 2, stride 1 gives 6x6. Dilation 1 is not printed.

func.func @dilated(%x: tensor<1x6x8x8xf32>) {
  %0 = gml.max_pool2d %x kernel [2, 2] stride [1, 1] padding [0, 0] dilation [2, 2] : tensor<1x6x8x8xf32> to tensor<1x6x6x6xf32>
  %1 = gml.max_pool2d %x kernel [2, 2] stride [1, 1] padding [0, 0] dilation [1, 1] : tensor<1x6x8x8xf32> to tensor<1x6x7x7xf32>
  func.return
}
// CHECK:      %0 = gml.max_pool2d %x kernel [2, 2] stride [1, 1] padding [0, 0] dilation [2, 2] : tensor<1x6x8x8xf32> to tensor<1x6x6x6xf32>
// CHECK-NEXT: %1 = gml.max_pool2d %x kernel [2, 2] stride [1, 1] padding [0, 0] : tensor<1x6x8x8xf32> to tensor<1x6x7x7xf32>
