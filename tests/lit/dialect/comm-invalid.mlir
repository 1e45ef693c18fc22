// RUN: not gimletc opt %s --split-input-file 2>&1 | filecheck %s

// One comm rule per chunk, each followed by its exact diagnostic. The first two
// are op verifiers; the rest come from the transfer check (compiler/placement/comm_check.py),
// which runs on any module with comm ops: the host (cpu0 here: no gml.target)
// runs the function body, every other device its segments in order; sends are
// buffered, a receive blocks until its data was sent.

func.func @unknown_transport(%x: tensor<4xf32>) {
  comm.send %x to "gpu0" channel 0 via "carrier_pigeon" : tensor<4xf32>
  func.return
}
// CHECK:      gimletc: error: comm.send: unknown transport "carrier_pigeon"; expected one of nvlink, pcie, host_bounce, network, xgmi, cxl, local

// -----

func.func @negative_channel(%x: tensor<4xf32>) {
  comm.send %x to "gpu0" channel -1 via "pcie" : tensor<4xf32>
  func.return
}
// CHECK-NEXT: gimletc: error: comm.send: channel ids are non-negative

// -----

func.func @main(%x: tensor<4xf32>) {
  comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32> loc("model.py":3:0)
  func.return
}
// CHECK-NEXT: gimletc: error: model.py:3: comm.send: channel 0 has no matching receive on gpu0

// -----

func.func @main() {
  gml.segment "gpu0" () : () -> () {
    %a = comm.recv from "cpu0" channel 5 via "pcie" : tensor<4xf32>
    gml.yield
  }
  func.return
}
// CHECK-NEXT: gimletc: error: comm.recv: channel 5 has no matching send from cpu0

// -----

func.func @main(%x: tensor<4xf32>) {
  comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
  gml.segment "gpu0" () : () -> () {
    %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf16>
    gml.yield
  }
  func.return
}
// CHECK-NEXT: gimletc: error: comm.recv: channel 0 sends tensor<4xf32> but receives tensor<4xf16>

// -----

// The type an irecv receives is the one its comm.wait yields.
func.func @main(%x: tensor<4xf32>) {
  %t = comm.isend %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
  gml.segment "gpu0" () : () -> () {
    %tok = comm.irecv from "cpu0" channel 0 via "pcie"
    %a = comm.wait %tok : tensor<2x2xf32>
    gml.yield
  }
  comm.wait %t
  func.return
}
// CHECK-NEXT: gimletc: error: comm.irecv: channel 0 sends tensor<4xf32> but receives tensor<2x2xf32>

// -----

// cpu0 sends to gpu0, but the receive on channel 0 is on gpu1.
func.func @main(%x: tensor<4xf32>) {
  comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
  gml.segment "gpu1" () : () -> () {
    %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
    gml.yield
  }
  func.return
}
// CHECK-NEXT: gimletc: error: comm.recv: channel 0 pairs cpu0 -> gpu0 with a receive on gpu1 from cpu0

// -----

// The receive on gpu0 expects channel 0 from gpu1, but the host sent it.
func.func @main(%x: tensor<4xf32>) {
  comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
  gml.segment "gpu0" () : () -> () {
    %a = comm.recv from "gpu1" channel 0 via "nvlink" : tensor<4xf32>
    gml.yield
  }
  func.return
}
// CHECK-NEXT: gimletc: error: comm.recv: channel 0 pairs cpu0 -> gpu0 with a receive on gpu0 from gpu1

// -----

func.func @main(%x: tensor<4xf32>) {
  comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
  comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
  gml.segment "gpu0" () : () -> () {
    %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
    gml.yield
  }
  func.return
}
// CHECK-NEXT: gimletc: error: comm.send: channel 0 is used by more than one send

// -----

// gpu0 and gpu1 each receive before they send: neither can move.
func.func @main(%x: tensor<4xf32>) {
  gml.segment "gpu0" (%x) : (tensor<4xf32>) -> () {
  ^bb0(%a: tensor<4xf32>):
    %b = comm.recv from "gpu1" channel 1 via "nvlink" : tensor<4xf32> loc("model.py":20:0)
    comm.send %a to "gpu1" channel 0 via "nvlink" : tensor<4xf32>
    gml.yield
  }
  gml.segment "gpu1" (%x) : (tensor<4xf32>) -> () {
  ^bb0(%a: tensor<4xf32>):
    %b = comm.recv from "gpu0" channel 0 via "nvlink" : tensor<4xf32>
    comm.send %a to "gpu0" channel 1 via "nvlink" : tensor<4xf32>
    gml.yield
  }
  func.return
}
// CHECK-NEXT: gimletc: error: model.py:20: comm.recv: transfers deadlock: gpu0 waits at recv channel 1; gpu1 waits at recv channel 0

// CHECK-NOT: builtin.module
