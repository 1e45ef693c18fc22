// RUN: not gimletc opt %s --pass-pipeline='canonicalize{bogus=3}' 2>&1 | filecheck %s --check-prefix=NAME
// RUN: not gimletc opt %s --pass-pipeline='canonicalize{max-elements=abc}' 2>&1 | filecheck %s --check-prefix=TYPE

// Pass options use xDSL's `pass{name=value}` syntax; an unknown option or a
// value of the wrong type is a user error naming the pass.

func.func @main() {
  func.return
}

// NAME: gimletc: error: bad options for pass 'canonicalize': Provided arguments ["bogus"] not found in expected arguments ["max_elements"]
// TYPE: gimletc: error: bad options for pass 'canonicalize': Incompatible types: given ('abc',), expected <class 'int'>
