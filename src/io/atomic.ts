// Atomic file and directory writes: contents go to a temporary name in the same
// directory, are fsynced, and are renamed into place only when complete, so a crash
// or a full disk leaves either the old file or the new one, never a part of one.
import * as fs from 'node:fs';
import * as path from 'node:path';

function tempName(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.tmp`);
}

/**
 * Writes `file` atomically through `write(fd)`, which may write in as many pieces as it
 * likes: the bytes go to a temporary file beside `file`, are fsynced, and the temporary
 * is renamed over `file` only when complete (then the directory is fsynced so the rename
 * is durable). On failure the temporary is removed, any existing `file` is left as it
 * was, and the error is rethrown with the temporary's name replaced by `file`'s.
 */
export function writeAtomic(file: string, write: (fd: number) => void): void {
  const tmp = tempName(path.resolve(file));
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, 'wx', 0o644);
    write(fd);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== null) {
      try {
        fs.closeSync(fd);
      } catch {
        // the original error is the one to report
      }
    }
    fs.rmSync(tmp, { force: true });
    if (e instanceof Error) e.message = e.message.split(tmp).join(file);
    throw e;
  }
  syncDirectory(path.dirname(path.resolve(file)));
}

/** Writes text or bytes to `file` atomically (see writeAtomic). */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  writeAtomic(file, (fd) => fs.writeFileSync(fd, data));
}

/** Makes a rename durable; some filesystems refuse to fsync a directory, which is harmless here. */
function syncDirectory(dir: string): void {
  let fd: number | null = null;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // best effort
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

/**
 * Builds a directory atomically: `fill` writes into a fresh temporary directory beside
 * `dir`, which is then renamed to `dir` (replacing nothing: `dir` must not exist). On
 * any failure the temporary directory is removed.
 */
export function writeDirAtomic(dir: string, fill: (tmpDir: string) => void): void {
  const tmp = tempName(path.resolve(dir));
  fs.mkdirSync(tmp);
  try {
    fill(tmp);
    fs.renameSync(tmp, dir);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** True for the temporary names this module makes (left behind only by a killed process). */
export function isAtomicTemp(name: string): boolean {
  return name.startsWith('.') && name.endsWith('.tmp');
}
