// RUN: gimletc opt %s --pass-pipeline=canonicalize,cse,canonicalize --print-ir-after=canonicalize --no-locations -o %t 2>&1 | filecheck %s

// --print-ir-after=P prints the module after each run of pass P (twice here)
// and not after the other passes.

func.func @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
  %0 = gml.permute %x [0, 1] : tensor<2x3xf32> to tensor<2x3xf32>
  %1 = gml.relu %0 : tensor<2x3xf32>
  func.return %1 : tensor<2x3xf32>
}

// CHECK:      // -----// IR Dump After canonicalize //----- //
// CHECK-NEXT: builtin.module {
// CHECK-NEXT:   func.func @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
// CHECK-NEXT:     %0 = gml.relu %x : tensor<2x3xf32>
// CHECK:      // -----// IR Dump After canonicalize //----- //
// CHECK-NOT:  IR Dump After cse
