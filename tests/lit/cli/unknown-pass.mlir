// RUN: not gimletc opt %s --pass-pipeline=canonicalize,frobnicate 2>&1 | filecheck %s

// A pass name that is not registered is a user error (exit 1) naming the pass
// and listing every available one, in pipeline order; nothing is printed.

func.func @main() {
  func.return
}

// CHECK:     gimletc: error: unknown pass 'frobnicate' in --pass-pipeline; available: infer-shapes, canonicalize, cse, fuse-elementwise, place, outline-segments, insert-comm, overlap-comm{{$}}
// CHECK-NOT: builtin.module
