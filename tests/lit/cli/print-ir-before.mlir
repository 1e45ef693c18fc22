// RUN: gimletc opt %s --pass-pipeline=canonicalize,cse --print-ir-before=cse --no-locations -o %t 2>&1 | filecheck %s

// --print-ir-before=P prints the module on stderr just before pass P runs, and
// nothing for the other passes.

func.func @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
  %0 = gml.permute %x [0, 1] : tensor<2x3xf32> to tensor<2x3xf32>
  %1 = gml.exp %0 : tensor<2x3xf32>
  %2 = gml.exp %0 : tensor<2x3xf32>
  %3 = gml.add %1, %2 : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  func.return %3 : tensor<2x3xf32>
}

// CHECK-NOT:  IR Dump Before canonicalize
// CHECK-NOT:  IR Dump After
// CHECK:      // -----// IR Dump Before cse //----- //
// CHECK-NEXT: builtin.module {
// CHECK-NEXT:   func.func @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
// CHECK-NEXT:     %0 = gml.exp %x : tensor<2x3xf32>
// CHECK-NEXT:     %1 = gml.exp %x : tensor<2x3xf32>
// CHECK-NEXT:     %2 = gml.add %0, %1 : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:     func.return %2 : tensor<2x3xf32>
// CHECK-NEXT:   }
// CHECK-NEXT: }
// CHECK-NOT:  IR Dump
