/* A native backtrace on a fatal signal, for a gpu_placements.py child: faulthandler prints
   the Python traceback of every thread, then hands the signal to this handler (installed
   first), which prints the C/C++ frames (library+offset: `addr2line -e LIB OFFSET` names
   them). */
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>
static void on_fatal(int sig) {
  static const char msg[] = "\nnative backtrace (gpu_placements child):\n";
  void* frames[64];
  int n = backtrace(frames, 64);
  (void)!write(2, msg, sizeof msg - 1);
  backtrace_symbols_fd(frames, n, 2);
  signal(sig, SIG_DFL);
  raise(sig);
}
void install(void) {
  void* warm[1];
  backtrace(warm, 1); /* loads the unwinder now, not inside the handler */
  const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
  for (unsigned i = 0; i < sizeof sigs / sizeof *sigs; ++i) signal(sigs[i], on_fatal);
}
