// RUN: gimletc opt %s | filecheck %s

// gml.var: variance over dims with a `correction` (1 = unbiased, the default, left
// out when printing; 0 = population variance).

func.func @var(%x: tensor<2x3xf32>) {
  %0 = gml.var %x [1] : tensor<2x3xf32> to tensor<2xf32>
  %1 = gml.var %x [0, 1] keepdim true correction 0.0 : tensor<2x3xf32> to tensor<1x1xf32>
  func.return
}
// CHECK:      %0 = gml.var %x [1] : tensor<2x3xf32> to tensor<2xf32>
// CHECK-NEXT: %1 = gml.var %x [0, 1] keepdim true correction 0.000000e+00 : tensor<2x3xf32> to tensor<1x1xf32>
