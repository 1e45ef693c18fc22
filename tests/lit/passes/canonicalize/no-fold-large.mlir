// RUN: gimletc opt %s --pass-pipeline='canonicalize{max-elements=4}' | filecheck %s
// RUN: gimletc opt %s --pass-pipeline=canonicalize | filecheck %s --check-prefix=DEFAULT

// Folded constants are printed inline, so only results of at most
// `max-elements` elements (default 64) are folded: with max-elements=4 the
// 4-element add folds and the 6-element one stays; by default both fold.

func.func @main() -> (tensor<4xf32>, tensor<2x3xf32>) {
  %a = gml.constant dense<1.0> : tensor<4xf32>
  %0 = gml.add %a, %a : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %b = gml.constant dense<2.0> : tensor<2x3xf32>
  %1 = gml.add %b, %b : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  func.return %0, %1 : tensor<4xf32>, tensor<2x3xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %0 = gml.constant dense<2.000000e+00> : tensor<4xf32>
// CHECK-NEXT:    %b = gml.constant dense<2.000000e+00> : tensor<2x3xf32>
// CHECK-NEXT:    %1 = gml.add %b, %b : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
// CHECK-NEXT:    func.return %0, %1 : tensor<4xf32>, tensor<2x3xf32>

// DEFAULT-LABEL: func.func @main
// DEFAULT-NEXT:    %0 = gml.constant dense<2.000000e+00> : tensor<4xf32>
// DEFAULT-NEXT:    %1 = gml.constant dense<4.000000e+00> : tensor<2x3xf32>
// DEFAULT-NEXT:    func.return %0, %1 : tensor<4xf32>, tensor<2x3xf32>
