// RUN: not gimletc opt %s --split-input-file --no-locations -o %t 2>&1 | filecheck %s --check-prefix=ERR
// RUN: filecheck %s < %t

// With --split-input-file each `// -----` chunk is processed on its own: the
// valid chunks are printed, separated by `// -----`, a failing chunk reports
// its error (line numbers refer to this file) and the exit status is 1.

func.func @first(%x: tensor<4xf32>) -> tensor<4xf32> {
  func.return %x : tensor<4xf32>
}

// -----

func.func @broken(%x: tensor<4xf32>) {
  %0 = gml.relu %x tensor<4xf32>
  func.return
}
// ERR: gimletc: error: {{.*}}split-input-file.mlir:[[# @LINE - 3]]:20: Expected ':'

// -----

func.func @second(%x: tensor<4xf32>) -> tensor<4xf32> {
  func.return %x : tensor<4xf32>
}

// CHECK:      builtin.module {
// CHECK-NEXT:   func.func @first(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:     func.return %x : tensor<4xf32>
// CHECK-NEXT:   }
// CHECK-NEXT: }
// CHECK-NEXT: // -----
// CHECK-NEXT: builtin.module {
// CHECK-NEXT:   func.func @second(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NOT:  @broken
