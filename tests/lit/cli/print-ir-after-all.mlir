// RUN: gimletc opt %s --pass-pipeline=canonicalize,cse --print-ir-after-all --no-locations -o %t 2>&1 | filecheck %s
// RUN: filecheck %s --check-prefix=OUT < %t

// --print-ir-after-all prints the module on stderr after every pass, under an
// MLIR-style header naming the pass; the final IR still goes to the output.

func.func @main(%x: tensor<2x3xf32>) -> tensor<6xf32> {
  %0 = gml.reshape %x : tensor<2x3xf32> to tensor<2x3xf32>
  %1 = gml.exp %0 : tensor<2x3xf32>
  %2 = gml.exp %0 : tensor<2x3xf32>
  %3 = gml.add %1, %2 : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  %4 = gml.reshape %3 : tensor<2x3xf32> to tensor<6xf32>
  func.return %4 : tensor<6xf32>
}

// CHECK:      // -----// IR Dump After canonicalize //----- //
// CHECK-NEXT: builtin.module {
// CHECK-NEXT:   func.func @main(%x: tensor<2x3xf32>) -> tensor<6xf32> {
// CHECK-NEXT:     %0 = gml.exp %x : tensor<2x3xf32>
// CHECK-NEXT:     %1 = gml.exp %x : tensor<2x3xf32>
// CHECK-NEXT:     %2 = gml.add %0, %1 : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:     %3 = gml.reshape %2 : tensor<2x3xf32> to tensor<6xf32>
// CHECK-NEXT:     func.return %3 : tensor<6xf32>
// CHECK-NEXT:   }
// CHECK-NEXT: }
// CHECK-NEXT: // -----// IR Dump After cse //----- //
// CHECK-NEXT: builtin.module {
// CHECK-NEXT:   func.func @main(%x: tensor<2x3xf32>) -> tensor<6xf32> {
// CHECK-NEXT:     %0 = gml.exp %x : tensor<2x3xf32>
// CHECK-NEXT:     %1 = gml.add %0, %0 : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:     %2 = gml.reshape %1 : tensor<2x3xf32> to tensor<6xf32>
// CHECK-NEXT:     func.return %2 : tensor<6xf32>
// CHECK-NEXT:   }
// CHECK-NEXT: }
// CHECK-NOT:  IR Dump

// OUT:      builtin.module {
// OUT-NEXT:   func.func @main(%x: tensor<2x3xf32>) -> tensor<6xf32> {
// OUT-NEXT:     %0 = gml.exp %x : tensor<2x3xf32>
// OUT-NEXT:     %1 = gml.add %0, %0 : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
