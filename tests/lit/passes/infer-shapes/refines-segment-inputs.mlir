// RUN: gimletc opt %s --pass-pipeline=infer-shapes 2>&1 | filecheck %s

// BUG: infer-shapes refines %0 (?x4 -> 2x4), which feeds a gml.segment, but
// leaves the segment's block argument at ?x4, so the module fails to verify:
//   gimletc: error: model.py:11: gml.segment: segment block arguments must
//   match its inputs after pass 'infer-shapes'
// Expected: the block argument follows its input, and the refinement carries
// on through the segment body to its result and the function's return type.

func.func @main(%x: tensor<2x4xf32>, %y: tensor<4xf32>) -> tensor<?x4xf32> {
  %0 = gml.add %x, %y : (tensor<2x4xf32>, tensor<4xf32>) -> tensor<?x4xf32>
  %r = gml.segment "cpu0" (%0) : (tensor<?x4xf32>) -> tensor<?x4xf32> {
  ^bb0(%a: tensor<?x4xf32>):
    %1 = gml.neg %a : tensor<?x4xf32>
    gml.yield %1 : tensor<?x4xf32>
  } loc("model.py":11:0)
  func.return %r : tensor<?x4xf32>
}

// CHECK-NOT:  error
// CHECK:      func.func @main(%x: tensor<2x4xf32>, %y: tensor<4xf32>) -> tensor<2x4xf32> {
// CHECK-NEXT:   %0 = gml.add %x, %y : (tensor<2x4xf32>, tensor<4xf32>) -> tensor<2x4xf32>
// CHECK-NEXT:   %r = gml.segment "cpu0"(%0) : (tensor<2x4xf32>) -> tensor<2x4xf32> {
// CHECK-NEXT:   ^bb0(%a: tensor<2x4xf32>):
// CHECK-NEXT:     %1 = gml.neg %a : tensor<2x4xf32>
// CHECK-NEXT:     gml.yield %1 : tensor<2x4xf32>
// CHECK-NEXT:   } loc("model.py":11:0)
// CHECK-NEXT:   func.return %r : tensor<2x4xf32>
