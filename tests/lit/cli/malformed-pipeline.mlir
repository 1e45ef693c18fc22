// RUN: not gimletc opt %s --pass-pipeline='canonicalize{' 2>&1 | filecheck %s

// KNOWN BUG: xDSL's ArgSpecParseError derives from BaseException, so neither
// build_pipeline's `except Exception` nor main's catches it and gimletc dies
// with a raw Python traceback instead of this one-line user error. Remove the

func.func @main() {
  func.return
}

// CHECK:     gimletc: error: malformed --pass-pipeline 'canonicalize{'
// CHECK-NOT: Traceback
