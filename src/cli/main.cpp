// quantkit command-line front end: parses the subcommand and turns every
// quantkit::Error into one line on stderr and exit code 1.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "cli/command.h"
#include "quantkit/error.h"

namespace quantkit::cli {

std::vector<Command>& commands() {
  static std::vector<Command> c;
  return c;
}

bool stderr_is_tty() { return ::isatty(2) == 1; }

}  // namespace quantkit::cli

int main(int argc, char** argv) {
  using namespace quantkit::cli;
  CLI::App app{"quantkit: quantize neural networks and measure what it costs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "quantkit 0.1.0");
  auto& cmds = commands();
  std::sort(cmds.begin(), cmds.end(), [](const Command& a, const Command& b) { return std::string(a.name) < b.name; });
  std::map<CLI::App*, std::function<int()>> actions;
  for (auto& c : cmds) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    actions[sub] = c.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, action] : actions)
      if (sub->parsed()) return action();
  } catch (const quantkit::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "quantkit: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "quantkit: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quantkit: internal error: %s\n", e.what());
    return 2;
  }
  return 1;
}
