// RUN: gimletc --list-passes | filecheck %s

// --list-passes names every registered pass with its one-line summary, in
// pipeline order: the core passes, then the four placement passes.

// CHECK:      Available passes:
// CHECK-NEXT:   infer-shapes      Refine `?` dims in result types from operand types (shape/dtype inference).
// CHECK-NEXT:   canonicalize      Fold constants, drop no-op reshapes/permutes, merge chains, remove dead ops.
// CHECK-NEXT:   cse               Merge identical side-effect-free ops (xDSL's CSE).
// CHECK-NEXT:   fuse-elementwise  Group chains of elementwise ops into gml.fusion regions (one kernel each).
// CHECK-NEXT:   place             Assign each op a device of the target cluster (greedy, dp or milp solver).
// CHECK-NEXT:   outline-segments  Group placed ops into acyclic per-device gml.segment regions.
// CHECK-NEXT:   insert-comm       Put comm.send/comm.recv (one channel per tensor per destination) on cross-device edges.
// CHECK-NEXT:   overlap-comm      Make transfers asynchronous (isend/irecv + wait) so they overlap with compute.
// CHECK-NOT:  {{.}}
