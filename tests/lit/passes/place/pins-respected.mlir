// RUN: gimletc opt %s --pass-pipeline='place{target="h100+cpu" pins="gml.matmul=cpu0"}' | filecheck %s --check-prefix=OPNAME
// RUN: gimletc opt %s --pass-pipeline='place{target="h100+cpu" pins="h.0.act=cpu0,gml.matmul=gpu0"}' | filecheck %s --check-prefix=PATH

// place records its decision as a gml.device attribute on every op that
// computes; weights (gml.param) get none, outlining copies them. Unpinned, this
// big bf16 chain goes to the H100 (see solvers-agree.mlir for an unpinned
// placement). A pin removes every other device for the
// ops it matches: by op name (both matmuls on cpu0, and relu follows rather
// than pay two transfers) or by the torch module path in the location (relu
// alone on cpu0 while the matmuls stay on gpu0).

func.func @main(%x: tensor<4096x4096xbf16>) -> tensor<4096x4096xbf16> {
  %w = gml.param "w" : tensor<4096x4096xbf16>
  %v = gml.param "v" : tensor<4096x4096xbf16>
  %0 = gml.matmul %x, %w : (tensor<4096x4096xbf16>, tensor<4096x4096xbf16>) -> tensor<4096x4096xbf16> loc("h.0.fc"("model.py":3:0))
  %1 = gml.relu %0 : tensor<4096x4096xbf16> loc("h.0.act"("model.py":4:0))
  %2 = gml.matmul %1, %v : (tensor<4096x4096xbf16>, tensor<4096x4096xbf16>) -> tensor<4096x4096xbf16> loc("h.1.fc"("model.py":5:0))
  func.return %2 : tensor<4096x4096xbf16>
}

// OPNAME:      builtin.module attributes {gml.target = "h100+cpu", gml.placement = "dp/latency", gml.modelled_latency_s = {{.*}}} {
// OPNAME:      %w = gml.param "w" : tensor<4096x4096xbf16>{{$}}
// OPNAME-NEXT: %v = gml.param "v" : tensor<4096x4096xbf16>{{$}}
// OPNAME-NEXT: %0 = gml.matmul %x, %w {gml.device = "cpu0"} :
// OPNAME-NEXT: %1 = gml.relu %0 {gml.device = "cpu0"} :
// OPNAME-NEXT: %2 = gml.matmul %1, %v {gml.device = "cpu0"} :

// PATH:      %0 = gml.matmul %x, %w {gml.device = "gpu0"} : {{.*}} loc("h.0.fc"("model.py":3:0))
// PATH-NEXT: %1 = gml.relu %0 {gml.device = "cpu0"} : {{.*}} loc("h.0.act"("model.py":4:0))
// PATH-NEXT: %2 = gml.matmul %1, %v {gml.device = "gpu0"} : {{.*}} loc("h.1.fc"("model.py":5:0))
