//! The `mastofs` program (also `mount.mastofs`, `mount.fuse.mastofs`): see [`mastofs::cli`].

fn main() {
    mastofs::cli::main()
}
