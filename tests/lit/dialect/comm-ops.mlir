// RUN: gimletc opt %s | gimletc opt - | filecheck %s

// Round trip of the comm dialect (and the gml.segment regions it lives in)
// through the printer and parser: the output of one `gimletc opt` is parsed
// again by a second one and must print identically. The module is a complete,
// consistent two-device program, since the verifier pairs every send with its
// receive and plays the device programs against each other: the host (cpu0,
// the function body) sends %x blocking and %y asynchronously to gpu0, whose
// segment receives both (one blocking, one irecv + wait) and sends the sum
// back. Also covers a multi-result segment, segment-level and comm-op
// locations, and the generic form of !comm.token.

builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
    comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32> loc("model.py":2:0)
    %t = comm.isend %y to "gpu0" channel 1 via "pcie" : tensor<4xf32>
    %h:2 = gml.segment "cpu0" (%x, %y) : (tensor<4xf32>, tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
    ^bb0(%a: tensor<4xf32>, %b: tensor<4xf32>):
      %n = gml.neg %a : tensor<4xf32>
      %e = gml.exp %b : tensor<4xf32>
      gml.yield %n, %e : tensor<4xf32>, tensor<4xf32>
    } loc("head"("model.py":3:0))
    gml.segment "gpu0" () : () -> () {
      %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
      %tb = comm.irecv from "cpu0" channel 1 via "pcie"
      %b = comm.wait %tb : tensor<4xf32>
      %c = gml.add %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
      %tc = "comm.isend"(%c) <{peer = "cpu0", channel = 2 : i64, transport = "pcie"}> : (tensor<4xf32>) -> !comm.token
      "comm.wait"(%tc) : (!comm.token) -> ()
      gml.yield
    }
    "comm.wait"(%t) : (!comm.token) -> ()
    %r = comm.recv from "gpu0" channel 2 via "pcie" : tensor<4xf32> loc("model.py":9:0)
    func.return %r, %h#0 : tensor<4xf32>, tensor<4xf32>
  }
}

// CHECK:      builtin.module attributes {gml.target = "h100+cpu"} {
// CHECK-NEXT:   func.func @main(%x: tensor<4xf32>, %y: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
// CHECK-NEXT:     comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32> loc("model.py":2:0)
// CHECK-NEXT:     %t = comm.isend %y to "gpu0" channel 1 via "pcie" : tensor<4xf32>{{$}}
// CHECK-NEXT:     %h, %h_1 = gml.segment "cpu0"(%x, %y) : (tensor<4xf32>, tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
// CHECK-NEXT:     ^bb0(%a: tensor<4xf32>, %b: tensor<4xf32>):
// CHECK-NEXT:       %n = gml.neg %a : tensor<4xf32>
// CHECK-NEXT:       %e = gml.exp %b : tensor<4xf32>
// CHECK-NEXT:       gml.yield %n, %e : tensor<4xf32>, tensor<4xf32>
// CHECK-NEXT:     } loc("head"("model.py":3:0))
// CHECK-NEXT:     gml.segment "gpu0"() : () -> () {
// CHECK-NEXT:       %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
// CHECK-NEXT:       %tb = comm.irecv from "cpu0" channel 1 via "pcie"{{$}}
// CHECK-NEXT:       %b = comm.wait %tb : tensor<4xf32>
// CHECK-NEXT:       %c = gml.add %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT:       %tc = comm.isend %c to "cpu0" channel 2 via "pcie" : tensor<4xf32>
// CHECK-NEXT:       comm.wait %tc{{$}}
// CHECK-NEXT:       gml.yield{{$}}
// CHECK-NEXT:     }
// CHECK-NEXT:     comm.wait %t{{$}}
// CHECK-NEXT:     %r = comm.recv from "gpu0" channel 2 via "pcie" : tensor<4xf32> loc("model.py":9:0)
// CHECK-NEXT:     func.return %r, %h : tensor<4xf32>, tensor<4xf32>
// CHECK-NEXT:   }
// CHECK-NEXT: }
