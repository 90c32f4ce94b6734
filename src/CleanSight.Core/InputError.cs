using System;

namespace CleanSight.Core
{
    /// <summary>
    /// A problem with a file the user gave us (checkpoint, config, image, dataset, calibration).
    /// The CLI prints <see cref="Exception.Message"/> as one line — "FILE: problem" — and exits
    /// non-zero; nothing else catches it.
    /// </summary>
    public sealed class InputError : Exception
    {
        public string File { get; }
        public string Problem { get; }

        public InputError(string file, string problem, Exception inner = null)
            : base($"{file}: {problem}", inner)
        {
            File = file;
            Problem = problem;
        }
    }
}
