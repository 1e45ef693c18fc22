// RUN: gimletc --list-passes | filecheck %s

// --list-passes names every registered pass with its one-line summary; the
// core pipeline's passes come first (later passes are tested elsewhere).

// CHECK:      Available passes:
// CHECK-NEXT:   infer-shapes      Refine `?` dims in result types from operand types (shape/dtype inference).
// CHECK-NEXT:   canonicalize      Fold constants, drop no-op reshapes/permutes, merge chains, remove dead ops.
// CHECK-NEXT:   cse               Merge identical side-effect-free ops (xDSL's CSE).
// CHECK-NEXT:   fuse-elementwise  Group chains of elementwise ops into gml.fusion regions (one kernel each).
