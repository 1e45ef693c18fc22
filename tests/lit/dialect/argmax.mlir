// RUN: gimletc opt %s | filecheck %s

// gml.argmax / gml.argmin: i64 indices along `dim`, or into the flattened input
// when `dim` is absent (then keepdim keeps every dim as 1). A 0-d input gives 0-d.

func.func @argmax(%x: tensor<2x3xf32>, %s: tensor<f32>) {
  %0 = gml.argmax %x dim 1 : tensor<2x3xf32> to tensor<2xi64>
  %1 = gml.argmax %x dim -2 keepdim true : tensor<2x3xf32> to tensor<1x3xi64>
  %2 = gml.argmin %x : tensor<2x3xf32> to tensor<i64>
  %3 = gml.argmin %x keepdim true : tensor<2x3xf32> to tensor<1x1xi64>
  %4 = gml.argmax %s dim 0 : tensor<f32> to tensor<i64>
  func.return
}
// CHECK:      %0 = gml.argmax %x dim 1 : tensor<2x3xf32> to tensor<2xi64>
// CHECK-NEXT: %1 = gml.argmax %x dim -2 keepdim true : tensor<2x3xf32> to tensor<1x3xi64>
// CHECK-NEXT: %2 = gml.argmin %x : tensor<2x3xf32> to tensor<i64>
// CHECK-NEXT: %3 = gml.argmin %x keepdim true : tensor<2x3xf32> to tensor<1x1xi64>
// CHECK-NEXT: %4 = gml.argmax %s dim 0 : tensor<f32> to tensor<i64>
