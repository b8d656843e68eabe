// Subcommand registry: each src/cli/<name>.cpp registers itself with a static
// Command object, so adding a subcommand touches one file.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace quantkit::cli {

struct Command {
  const char* name;
  const char* help;
  // Adds options to `sub`; returns the action run when the subcommand is chosen.
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

std::vector<Command>& commands();

struct Register {
  explicit Register(Command c) { commands().push_back(std::move(c)); }
};

// True when stderr is a terminal: progress lines are drawn only then.
bool stderr_is_tty();

}  // namespace quantkit::cli
