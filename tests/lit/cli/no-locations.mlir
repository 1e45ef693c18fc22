// RUN: gimletc opt %s | filecheck %s
// RUN: gimletc opt %s --no-locations | filecheck %s --check-prefix=NOLOC

// Locations are printed by default; --no-locations leaves every loc(...) out,
// on ops, on region ops and on their terminators alike.

func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %0 = gml.fusion : tensor<4xf32> {
    %1 = gml.exp %x : tensor<4xf32> loc("model.py":3:0)
    %2 = gml.neg %1 : tensor<4xf32> loc("layers.0"("model.py":4:0))
    gml.yield %2 : tensor<4xf32> loc("model.py":4:0)
  } loc("layers.0"("model.py":4:0))
  func.return %0 : tensor<4xf32> loc("model.py":5:0)
}

// CHECK:      %1 = gml.exp %x : tensor<4xf32> loc("model.py":3:0)
// CHECK:      } loc("layers.0"("model.py":4:0))
// CHECK-NEXT: func.return %0 : tensor<4xf32> loc("model.py":5:0)

// NOLOC:      func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
// NOLOC-NEXT:   %0 = gml.fusion : tensor<4xf32> {
// NOLOC-NEXT:     %1 = gml.exp %x : tensor<4xf32>{{$}}
// NOLOC-NEXT:     %2 = gml.neg %1 : tensor<4xf32>{{$}}
// NOLOC-NEXT:     gml.yield %2 : tensor<4xf32>{{$}}
// NOLOC-NEXT:   }{{$}}
// NOLOC-NEXT:   func.return %0 : tensor<4xf32>{{$}}
// NOLOC-NOT:  loc(
