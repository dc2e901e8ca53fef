// The part of an artifact's runtime that both targets share: error reporting across the C ABI
// (a thread-local message and an error code, raised inside generated code as an exception and
// caught at the ABI boundary) and the small helpers generated code calls.
#pragma once
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <exception>
#include "kiln_abi.h"

namespace kiln {
namespace rt {

struct Error : std::exception {
  int code;
  explicit Error(int c) : code(c) {}
};

static thread_local char last_error[2048] = "";

__attribute__((format(printf, 2, 3))) static void set_error(int code, const char* fmt, ...) {
  (void)code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
}

__attribute__((format(printf, 2, 3), noreturn)) static void fail(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  throw Error(code);
}

// Runs f, turning a raised Error (or any C++ exception) into an ABI error code.
template <typename F>
static int guard(F f) {
  try {
    f();
    return KILN_OK;
  } catch (const Error& e) {
    return e.code;
  } catch (const std::bad_alloc&) {
    set_error(KILN_ERR_OOM, "out of host memory");
    return KILN_ERR_OOM;
  } catch (const std::exception& e) {
    set_error(KILN_ERR_INVALID, "%s", e.what());
    return KILN_ERR_INVALID;
  }
}

static const char* dtype_name(int d) {
  static const char* names[] = {"f32", "f16", "bf16", "i64", "i32", "i8", "u8", "bool"};
  return d >= 0 && d < 8 ? names[d] : "?";
}

}  // namespace rt
}  // namespace kiln

extern "C" const char* kiln_last_error(void) { return kiln::rt::last_error; }
extern "C" int kiln_abi_version(void) { return KILN_ABI_VERSION; }
