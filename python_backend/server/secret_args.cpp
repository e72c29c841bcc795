// Loaded into tritonserver with LD_PRELOAD by the megaclass launcher (python_backend/server/security.py).
// Replaces the placeholder in tritonserver's arguments with the admin key read from a pipe, before
// main() runs: the key is in the process's memory but not in /proc/<pid>/cmdline (which shows the
// original argument strings) and in no environment variable, so the stubs Triton starts never see it.
#include <cstdlib>
#include <cstring>
#include <unistd.h>

static const char kPlaceholder[] = "@MEGACLASS_ADMIN_KEY@";

extern "C" __attribute__((constructor)) void megaclass_secret_args(int argc, char** argv, char**) {
  const char* fd_text = std::getenv("MEGACLASS_SECRET_FD");
  if (fd_text == nullptr) return;
  int fd = std::atoi(fd_text);
  static char key[4096];
  size_t n = 0;
  ssize_t got;
  while (n < sizeof(key) - 1 && (got = read(fd, key + n, sizeof(key) - 1 - n)) > 0) n += static_cast<size_t>(got);
  close(fd);
  key[n] = '\0';
  unsetenv("MEGACLASS_SECRET_FD");
  // The backend stubs Triton starts do not load this library; what was preloaded before it stays.
  const char* rest = std::getenv("MEGACLASS_PRELOAD_REST");
  if (rest != nullptr && *rest != '\0') setenv("LD_PRELOAD", rest, 1); else unsetenv("LD_PRELOAD");
  unsetenv("MEGACLASS_PRELOAD_REST");
  const size_t plen = sizeof(kPlaceholder) - 1;
  for (int i = 0; i < argc; ++i) {
    char* at = std::strstr(argv[i], kPlaceholder);
    if (at == nullptr) continue;
    size_t head = static_cast<size_t>(at - argv[i]), tail = std::strlen(at + plen);
    char* arg = static_cast<char*>(std::malloc(head + n + tail + 1));
    if (arg == nullptr) std::abort();
    std::memcpy(arg, argv[i], head);
    std::memcpy(arg + head, key, n);
    std::memcpy(arg + head + n, at + plen, tail + 1);
    argv[i] = arg;
  }
  std::memset(key, 0, sizeof(key));
}
extern "C" int mc_secret_args_version() { return 1; }
