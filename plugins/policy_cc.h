// Header-only C++ adapter over the C plugin ABI in rematcher_policy.h.
//
// A plugin author writes one class and one macro line:
//
//   class MyPolicy {
//    public:
//     // Parse options with `args` (key=value,key=value). Unknown keys are
//     // rejected for you after Create returns. nullptr + *error on failure.
//     static std::unique_ptr<MyPolicy> Create(rematcher_plugin::PolicyArgs&
//     args,
//                                             std::string* error);
//     // Index into snap, or rematcher_plugin::kNoPreference.
//     int32_t Pick(const rematcher_plugin::Snapshot& snap, const rm_request&
//     req);
//     // Optional; detected at compile time.
//     void OnResult(const rm_result& result);
//   };
//   REMATCHER_DEFINE_POLICY(MyPolicy, "my_policy")
//
// The macro emits the exported C entry point and the trampolines. Everything
// here depends on the C++ standard library only, so a plugin links nothing but
// libstdc++. The threading and ownership rules are those of rematcher_policy.h:
// Pick/OnResult run on one thread at a time per instance, and the Snapshot
// view (and the host memory behind it) is valid only during the call.
#ifndef REMATCHER_PLUGINS_POLICY_CC_H_
#define REMATCHER_PLUGINS_POLICY_CC_H_

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>

#include "plugins/rematcher_policy.h"

namespace rematcher_plugin {

inline constexpr int32_t kNoPreference = RM_NO_PREFERENCE;

inline bool IsEligible(const rm_backend_info& b) {
  return rm_backend_eligible(&b) != 0;
}

// Eligible and not stalled (RM_BACKEND_STALLED).
inline bool IsPreferred(const rm_backend_info& b) {
  return rm_backend_preferred(&b) != 0;
}

// Read-only view of the host's snapshot. OWNERSHIP: borrows host memory that
// is valid only during the Pick call; never store it.
class Snapshot {
 public:
  explicit Snapshot(const rm_snapshot& snap) : snap_(snap) {}
  uint64_t now_ns() const { return snap_.now_ns; }
  size_t size() const { return snap_.num_backends; }
  bool empty() const { return snap_.num_backends == 0; }
  const rm_backend_info& operator[](size_t i) const {
    return snap_.backends[i];
  }
  const rm_backend_info* begin() const { return snap_.backends; }
  const rm_backend_info* end() const {
    return snap_.backends + snap_.num_backends;
  }
  const rm_snapshot& raw() const { return snap_; }
  // Of backend i's outstanding, the decisions not started yet (ABI 1.3; 0
  // from an older host), and the rest: the requests in flight.
  uint32_t pending(size_t i) const {
    return rm_snapshot_pending(&snap_, static_cast<uint32_t>(i));
  }
  uint32_t in_flight(size_t i) const {
    return rm_backend_in_flight(&snap_, static_cast<uint32_t>(i));
  }

 private:
  const rm_snapshot& snap_;
};

// `key=value,key=value` options (whitespace around tokens is ignored). A
// policy pulls the keys it knows with Get*; the adapter then rejects any key
// nobody asked for, naming the keys that are known.
class PolicyArgs {
 public:
  // Returns false and sets *error on malformed text (missing '=', empty key,
  // duplicate key).
  static bool Parse(const std::string& text, PolicyArgs* out,
                    std::string* error) {
    out->values_.clear();
    out->known_.clear();
    size_t pos = 0;
    while (pos <= text.size()) {
      size_t comma = text.find(',', pos);
      if (comma == std::string::npos) comma = text.size();
      std::string item = Trim(text.substr(pos, comma - pos));
      pos = comma + 1;
      if (item.empty()) continue;  // tolerate "a=1," and ""
      size_t eq = item.find('=');
      if (eq == std::string::npos) {
        *error = "malformed option '" + item + "': expected key=value";
        return false;
      }
      std::string key = Trim(item.substr(0, eq));
      std::string value = Trim(item.substr(eq + 1));
      if (key.empty()) {
        *error = "malformed option '" + item + "': empty key";
        return false;
      }
      if (!out->values_.emplace(key, value).second) {
        *error = "option '" + key + "' given twice";
        return false;
      }
    }
    return true;
  }

  bool Has(const std::string& key) {
    known_.insert(key);
    return values_.count(key) != 0;
  }

  // Each Get* leaves *out untouched when the key is absent and returns false
  // with *error set when the value does not parse.
  bool GetUint64(const std::string& key, uint64_t* out, std::string* error) {
    if (!Has(key)) return true;
    const std::string& v = values_[key];
    char* end = nullptr;
    errno = 0;
    unsigned long long parsed = std::strtoull(v.c_str(), &end, 0);
    if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0) {
      *error = "option '" + key + "': '" + v + "' is not an unsigned integer";
      return false;
    }
    *out = parsed;
    return true;
  }

  bool GetDouble(const std::string& key, double* out, std::string* error) {
    if (!Has(key)) return true;
    const std::string& v = values_[key];
    char* end = nullptr;
    errno = 0;
    double parsed = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || errno != 0) {
      *error = "option '" + key + "': '" + v + "' is not a number";
      return false;
    }
    *out = parsed;
    return true;
  }

  bool GetString(const std::string& key, std::string* out) {
    if (!Has(key)) return true;
    *out = values_[key];
    return true;
  }

  // False (with *error naming the first unknown key and the known ones) if a
  // key was given that no Get*/Has call asked about.
  bool CheckNoUnknownKeys(std::string* error) const {
    for (const auto& kv : values_) {
      if (known_.count(kv.first)) continue;
      std::string known;
      for (const auto& k : known_) known += (known.empty() ? "" : ", ") + k;
      *error = "unknown option '" + kv.first +
               "' (accepted: " + (known.empty() ? std::string("none") : known) +
               ")";
      return false;
    }
    return true;
  }

 private:
  static std::string Trim(const std::string& s) {
    size_t b = s.find_first_not_of(" \t\n");
    if (b == std::string::npos) return "";
    size_t e = s.find_last_not_of(" \t\n");
    return s.substr(b, e - b + 1);
  }

  std::map<std::string, std::string> values_;
  std::set<std::string> known_;
};

namespace internal {

inline void CopyError(const std::string& msg, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

template <typename T, typename = void>
struct HasOnResult : std::false_type {};
template <typename T>
struct HasOnResult<T, std::void_t<decltype(std::declval<T&>().OnResult(
                          std::declval<const rm_result&>()))>>
    : std::true_type {};

// Exceptions must not cross the C boundary. The project builds without
// throwing, but a plugin may be built with exceptions on (std::bad_alloc).
#if defined(__cpp_exceptions)
#define RM_PLUGIN_TRY try
#define RM_PLUGIN_CATCH(on_error) \
  catch (...) {                   \
    on_error;                     \
  }
#else
#define RM_PLUGIN_TRY
#define RM_PLUGIN_CATCH(on_error)
#endif

template <typename T>
void* Create(const char* args, char* err, size_t err_len) {
  RM_PLUGIN_TRY {
    PolicyArgs parsed;
    std::string error;
    if (!PolicyArgs::Parse(args == nullptr ? "" : args, &parsed, &error)) {
      CopyError(error, err, err_len);
      return nullptr;
    }
    std::unique_ptr<T> policy = T::Create(parsed, &error);
    if (policy == nullptr) {
      CopyError(error.empty() ? "Create() failed without a message" : error,
                err, err_len);
      return nullptr;
    }
    if (!parsed.CheckNoUnknownKeys(&error)) {
      CopyError(error, err, err_len);
      return nullptr;
    }
    return policy.release();
  }
  RM_PLUGIN_CATCH(CopyError("Create() threw an exception", err, err_len);
                  return nullptr;)
}

template <typename T>
void Destroy(void* instance) {
  delete static_cast<T*>(instance);
}

template <typename T>
int32_t Pick(void* instance, const rm_snapshot* snap, const rm_request* req) {
  RM_PLUGIN_TRY {
    return static_cast<T*>(instance)->Pick(Snapshot(*snap), *req);
  }
  RM_PLUGIN_CATCH(return kNoPreference;)
}

template <typename T>
void OnResult(void* instance, const rm_result* result) {
  RM_PLUGIN_TRY { static_cast<T*>(instance)->OnResult(*result); }
  RM_PLUGIN_CATCH(return;)
}

template <typename T>
constexpr void (*OnResultFn())(void*, const rm_result*) {
  if constexpr (HasOnResult<T>::value) {
    return &OnResult<T>;
  } else {
    return nullptr;
  }
}

template <typename T>
const rm_policy_v1* Entry(const char* name) {
  static const rm_policy_v1 entry = {
      sizeof(rm_policy_v1),
      RM_POLICY_ABI_MAJOR,
      RM_POLICY_ABI_MINOR,
      name,
      &Create<T>,
      &Destroy<T>,
      &Pick<T>,
      OnResultFn<T>(),
  };
  return &entry;
}

}  // namespace internal
}  // namespace rematcher_plugin

// Emits `rematcher_policy_entry` for ClassName. Use once per shared object,
// at namespace scope, outside any namespace.
#define REMATCHER_DEFINE_POLICY(ClassName, policy_name)                 \
  extern "C" RM_POLICY_EXPORT const struct rm_policy_v1*                \
  rematcher_policy_entry(void) {                                        \
    return ::rematcher_plugin::internal::Entry<ClassName>(policy_name); \
  }

#endif  // REMATCHER_PLUGINS_POLICY_CC_H_
