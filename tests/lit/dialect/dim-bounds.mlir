// RUN: gimletc opt %s | filecheck %s
// RUN: gimletc opt %s | gimletc opt - | filecheck %s

// The importer's torch.export Dim bounds (compiler/frontend/importer.py): the module's
// gml.dims gives each symbol {min, max, example} (max absent when unbounded), each
// input's gml.dims the symbols of its `?` dims in order. They print and parse back
// unchanged; TensorRT's optimization profiles read them (backends/tensorrt/profile.py).

builtin.module attributes {gml.dims = {s0 = {min = 1 : i64, max = 1024 : i64, example = 4 : i64}, s1 = {min = 2 : i64, example = 16 : i64}}} {
  func.func @main(%x: tensor<?x?x8xf32> {gml.name = "x", gml.dims = ["s0", "s1"]}, %y: tensor<8x8xf32> {gml.name = "y"}) -> tensor<?x?x8xf32> {
    %0 = gml.matmul %x, %y : (tensor<?x?x8xf32>, tensor<8x8xf32>) -> tensor<?x?x8xf32>
    func.return %0 : tensor<?x?x8xf32>
  }
}

// CHECK:      builtin.module attributes {gml.dims = {s0 = {min = 1 : i64, max = 1024 : i64, example = 4 : i64}, s1 = {min = 2 : i64, example = 16 : i64}}} {
// CHECK-NEXT:   func.func @main(%x: tensor<?x?x8xf32> {gml.name = "x", gml.dims = ["s0", "s1"]}, %y: tensor<8x8xf32> {gml.name = "y"}) -> tensor<?x?x8xf32> {
