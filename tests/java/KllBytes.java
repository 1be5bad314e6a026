// Serializes KLL doubles sketches with the Java Apache DataSketches library, so
// that tests can check the pipeline reads sketches it did not build itself.
// Driven by tests/foreign_sketches.py; all numbers big-endian (java.io.Data*).
//
//   stdin:  repeated until EOF: int k, int count, count doubles
//   stdout: for each sketch read: int length, then KllDoublesSketch.toByteArray()
//
// A binary protocol, not text: every double arrives exactly as Python had it.
// Any error (a k out of range, a truncated input) exits non-zero with the
// exception on stderr, and Python reports it.

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;

import org.apache.datasketches.kll.KllDoublesSketch;

public final class KllBytes {
  private KllBytes() { }

  public static void main(final String[] args) throws IOException {
    final DataInputStream in = new DataInputStream(new BufferedInputStream(System.in, 1 << 16));
    final DataOutputStream out = new DataOutputStream(new BufferedOutputStream(System.out, 1 << 16));
    while (true) {
      final int k;
      try {
        k = in.readInt();
      } catch (final EOFException end) {
        break; // a clean end: only between sketches
      }
      final int count = in.readInt();
      final KllDoublesSketch sketch = KllDoublesSketch.newHeapInstance(k);
      for (int i = 0; i < count; i++) {
        sketch.update(in.readDouble());
      }
      final byte[] bytes = sketch.toByteArray();
      out.writeInt(bytes.length);
      out.write(bytes);
    }
    out.flush();
  }
}
