// What a CLI command provides to the dispatcher in main.ts. One file per command under
// commands/ exports a `command`; main.ts lists them and loads each only when it runs,
// so `finlora --help` starts without loading the native backend.

export interface Command {
  readonly name: string;
  /** The full text of `finlora <name> --help`. */
  readonly help: string;
  /**
   * Runs with the arguments after the command name; returns the exit code. Expected
   * failures throw UserError / UsageError (errors.ts); `out` writes to stdout.
   */
  run(argv: readonly string[], out: (text: string) => void): number | Promise<number>;
}
