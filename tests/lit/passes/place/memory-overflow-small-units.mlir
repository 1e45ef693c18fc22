// RUN: not gimletc opt %s --pass-pipeline='place{target="%inputs/tiny-memory.cluster"}' 2>&1 | filecheck %s

// BUG: the "no placement fits" message always prints GB with two decimals, so
// a model and devices of a few MB read as nothing at all:
//   gimletc: error: no placement fits: the model's weights total 0.00 GB;
//   devices hold cpu0 0.00 GB, acc0 0.00 GB
// Expected: a unit that shows the sizes (1.05 MB of weights, ~1 MB per device).

func.func @main(%x: tensor<1x512xf32>) -> tensor<1x512xf32> {
  %w = gml.param "w" : tensor<512x512xf32>
  %0 = gml.matmul %x, %w : (tensor<1x512xf32>, tensor<512x512xf32>) -> tensor<1x512xf32>
  func.return %0 : tensor<1x512xf32>
}

// CHECK:     gimletc: error: no placement fits: the model's weights total 1.05 MB; room after activations: cpu0 {{[0-9.]+}} KB, acc0 {{[0-9.]+}} KB{{$}}
// CHECK-NOT: builtin.module
