// RUN: gimletc opt %s --pass-pipeline=infer-shapes,canonicalize,cse --timing -o %t 2>&1 | filecheck %s

// --timing reports the wall time of each pass, in pipeline order, on stderr.

func.func @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
  %0 = gml.exp %x : tensor<2x3xf32>
  func.return %0 : tensor<2x3xf32>
}

// CHECK:      ===-------------------------------------------------------------------------===
// CHECK-NEXT:                          ... Pass execution timing report ...
// CHECK-NEXT: ===-------------------------------------------------------------------------===
// CHECK-NEXT:   Total Execution Time: {{[0-9]+\.[0-9]+}} seconds
// CHECK-EMPTY:
// CHECK-NEXT:   ----Wall Time----  ----Name----
// CHECK-NEXT:   {{[0-9]+\.[0-9]+}} ({{ *[0-9]+\.[0-9]}}%)  infer-shapes
// CHECK-NEXT:   {{[0-9]+\.[0-9]+}} ({{ *[0-9]+\.[0-9]}}%)  canonicalize
// CHECK-NEXT:   {{[0-9]+\.[0-9]+}} ({{ *[0-9]+\.[0-9]}}%)  cse
// CHECK-NEXT:   {{[0-9]+\.[0-9]+}} (100.0%)  Total
