// RUN: not gimletc opt %s --pass-pipeline='place{target="%inputs/small-memory.cluster"}' 2>&1 | filecheck %s
// RUN: not gimletc opt %s --pass-pipeline='place{target="%inputs/small-memory.cluster" solver=greedy}' 2>&1 | filecheck %s --check-prefix=GREEDY

// A 1.07 GB weight on a cluster whose two devices hold 1 GB each: no
// placement fits, a user error (exit 1) with the sizes involved; nothing is
// printed (milp words it as dp does). Greedy, which places op by op, names the op it could not place.

func.func @main(%x: tensor<1x16384xbf16>) -> tensor<1x32768xbf16> {
  %w = gml.param "w" : tensor<16384x32768xbf16>
  %0 = gml.matmul %x, %w : (tensor<1x16384xbf16>, tensor<16384x32768xbf16>) -> tensor<1x32768xbf16> loc("model.py":3:0)
  func.return %0 : tensor<1x32768xbf16>
}

// CHECK:     gimletc: error: no placement fits: the model's weights total 1.07 GB; room after activations: cpu0 999.87 MB, acc0 999.87 MB{{$}}
// CHECK-NOT: builtin.module

// GREEDY:     gimletc: error: model.py:3: gml.matmul has no device to run on: every device that can run it is full{{$}}
// GREEDY-NOT: builtin.module
