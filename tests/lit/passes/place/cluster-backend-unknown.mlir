// RUN: not gimletc opt %s --pass-pipeline='place{target="%inputs/bad-backend.cluster"}' 2>&1 | filecheck %s

// A backend the device's kind has not: file:line:col, the nearest name and the
// kind's backends.

func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %0 = gml.exp %x : tensor<4xf32>
  func.return %0 : tensor<4xf32>
}

// CHECK:     gimletc: error: {{.*}}bad-backend.cluster:5:13: unknown backend 'tensorrtt' for nvidia devices (did you mean 'tensorrt'?); backends for nvidia: cuda, tensorrt, interpreter{{$}}
// CHECK-NOT: builtin.module
