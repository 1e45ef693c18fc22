// RUN: gimletc opt %s --pass-pipeline='place{target="h100+cpu" solver=greedy}' | filecheck %s --check-prefixes=CHECK,GREEDY
// RUN: gimletc opt %s --pass-pipeline='place{target="h100+cpu" solver=dp}' | filecheck %s --check-prefixes=CHECK,DP
// RUN: gimletc opt %s --pass-pipeline='place{target="h100+cpu" solver=milp}' | filecheck %s --check-prefixes=CHECK,MILP

// On a simple chain the three solvers find the same placement: the cheap neg
// stays on the host, where the input arrives; the two weight-streaming matmuls
// and the relu between them run on the H100. The module records the solver.

func.func @main(%x: tensor<8x4096xbf16>) -> tensor<8x4096xbf16> {
  %w = gml.param "w" : tensor<4096x4096xbf16>
  %v = gml.param "v" : tensor<4096x4096xbf16>
  %0 = gml.neg %x : tensor<8x4096xbf16>
  %1 = gml.matmul %0, %w : (tensor<8x4096xbf16>, tensor<4096x4096xbf16>) -> tensor<8x4096xbf16>
  %2 = gml.relu %1 : tensor<8x4096xbf16>
  %3 = gml.matmul %2, %v : (tensor<8x4096xbf16>, tensor<4096x4096xbf16>) -> tensor<8x4096xbf16>
  func.return %3 : tensor<8x4096xbf16>
}

// GREEDY:     gml.placement = "greedy/latency"
// DP:         gml.placement = "dp/latency"
// MILP:       gml.placement = "milp/latency"
// CHECK:      %0 = gml.neg %x {gml.device = "cpu0"} :
// CHECK-NEXT: %1 = gml.matmul %0, %w {gml.device = "gpu0"} :
// CHECK-NEXT: %2 = gml.relu %1 {gml.device = "gpu0"} :
// CHECK-NEXT: %3 = gml.matmul %2, %v {gml.device = "gpu0"} :
