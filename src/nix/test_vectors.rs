//! Test vectors produced by real Nix 2.8 (Debian nix-bin), embedded verbatim.
//!
//! Made with a throw-away key and a private store:
//! `nix-store --generate-binary-cache-key test-1 sk pk`, `nix-build` of two input-addressed
//! derivations (`top` refers to `dep`), then
//! `nix copy --to "file://$W/cache?compression=<c>&secret-key=sk"` for c in xz, none, zstd,
//! and once without a secret key.

/// `sk` as written by `nix-store --generate-binary-cache-key` (no trailing newline).
pub const SECRET_KEY_FILE: &str = "test-1:FhWmFf0DbqetWag4/91BnXBR0gc139+AVdt/yhy1GlLRaGFK2JWka9xWH3NPwcmW06Nvzwv5yKD057ydH0E29A==";
/// `pk` as written by `nix-store --generate-binary-cache-key` (no trailing newline).
pub const PUBLIC_KEY_FILE: &str = "test-1:0WhhStiVpGvcVh9zT8HJltOjb88L+cig9Oe8nR9BNvQ=";

/// `top` (references `dep`), `?compression=xz`, signed.
pub const TOP_XZ: &str = "\
StorePath: /nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top\n\
URL: nar/1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0.nar.xz\n\
Compression: xz\n\
FileHash: sha256:1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0\n\
FileSize: 172\n\
NarHash: sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k\n\
NarSize: 160\n\
References: z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep\n\
Deriver: 13ymk1q4wh30z4fq5lf3a5d15fvb07f9-top.drv\n\
Sig: test-1:2Hhv4me0TPbqueJQ/J4HzAMHXak9dgn2oD9S6EhNHLCbiMroIipFdmKz3WHp/Tr9JHFcZl2jKdC0I6XgUWYJBw==\n\
";

/// `dep` (no references), `?compression=xz`, signed.
pub const DEP_XZ: &str = "\
StorePath: /nix/store/z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep\n\
URL: nar/1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j.nar.xz\n\
Compression: xz\n\
FileHash: sha256:1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j\n\
FileSize: 128\n\
NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\n\
NarSize: 120\n\
References: \n\
Deriver: p2qkh6lklg7zljx468xsl3gwif574nq4-dep.drv\n\
Sig: test-1:2hj7qF4WBnqn8HwZxpihPrEgGPwo7mawmxW5YTBtwsYiEtBAgXTXTsgBer+qzhMjfnhrRpyN3hZixuzZbXeqCQ==\n\
";

/// `top`, `?compression=none`, signed.
pub const TOP_NONE: &str = "\
StorePath: /nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top\n\
URL: nar/0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k.nar\n\
Compression: none\n\
FileHash: sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k\n\
FileSize: 160\n\
NarHash: sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k\n\
NarSize: 160\n\
References: z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep\n\
Deriver: 13ymk1q4wh30z4fq5lf3a5d15fvb07f9-top.drv\n\
Sig: test-1:2Hhv4me0TPbqueJQ/J4HzAMHXak9dgn2oD9S6EhNHLCbiMroIipFdmKz3WHp/Tr9JHFcZl2jKdC0I6XgUWYJBw==\n\
";

/// `dep`, `?compression=none`, signed.
pub const DEP_NONE: &str = "\
StorePath: /nix/store/z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep\n\
URL: nar/00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv.nar\n\
Compression: none\n\
FileHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\n\
FileSize: 120\n\
NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\n\
NarSize: 120\n\
References: \n\
Deriver: p2qkh6lklg7zljx468xsl3gwif574nq4-dep.drv\n\
Sig: test-1:2hj7qF4WBnqn8HwZxpihPrEgGPwo7mawmxW5YTBtwsYiEtBAgXTXTsgBer+qzhMjfnhrRpyN3hZixuzZbXeqCQ==\n\
";

/// `top`, `?compression=zstd`, signed.
pub const TOP_ZSTD: &str = "\
StorePath: /nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top\n\
URL: nar/0vz57xli0mykd77rimfl8cs3hy36cgmk4bc1m9vq3iwglvja19a6.nar.zst\n\
Compression: zstd\n\
FileHash: sha256:0vz57xli0mykd77rimfl8cs3hy36cgmk4bc1m9vq3iwglvja19a6\n\
FileSize: 130\n\
NarHash: sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k\n\
NarSize: 160\n\
References: z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep\n\
Deriver: 13ymk1q4wh30z4fq5lf3a5d15fvb07f9-top.drv\n\
Sig: test-1:2Hhv4me0TPbqueJQ/J4HzAMHXak9dgn2oD9S6EhNHLCbiMroIipFdmKz3WHp/Tr9JHFcZl2jKdC0I6XgUWYJBw==\n\
";

/// `dep`, `?compression=zstd`, signed.
pub const DEP_ZSTD: &str = "\
StorePath: /nix/store/z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep\n\
URL: nar/1nj8qw83jfbq7chly2fbkqlgz29s7ic96vki3j4dfv0vwz594s94.nar.zst\n\
Compression: zstd\n\
FileHash: sha256:1nj8qw83jfbq7chly2fbkqlgz29s7ic96vki3j4dfv0vwz594s94\n\
FileSize: 89\n\
NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\n\
NarSize: 120\n\
References: \n\
Deriver: p2qkh6lklg7zljx468xsl3gwif574nq4-dep.drv\n\
Sig: test-1:2hj7qF4WBnqn8HwZxpihPrEgGPwo7mawmxW5YTBtwsYiEtBAgXTXTsgBer+qzhMjfnhrRpyN3hZixuzZbXeqCQ==\n\
";

/// `top`, default compression (xz for file://), no secret key: unsigned.
pub const TOP_UNSIGNED: &str = "\
StorePath: /nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top\n\
URL: nar/1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0.nar.xz\n\
Compression: xz\n\
FileHash: sha256:1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0\n\
FileSize: 172\n\
NarHash: sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k\n\
NarSize: 160\n\
References: z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep\n\
Deriver: 13ymk1q4wh30z4fq5lf3a5d15fvb07f9-top.drv\n\
";

/// The NAR of `dep` (`nar/00kjynz8….nar` in the compression=none cache), base64.
pub const DEP_NAR_BASE64: &str = "DQAAAAAAAABuaXgtYXJjaGl2ZS0xAAAAAQAAAAAAAAAoAAAAAAAAAAQAAAAAAAAAdHlwZQAAAAAHAAAAAAAAAHJlZ3VsYXIACAAAAAAAAABjb250ZW50cwQAAAAAAAAAZGVwCgAAAAABAAAAAAAAACkAAAAAAAAA";

/// `multi-1.0`: four references (sorted by Nix), one of them itself; `?compression=xz`, signed.
pub const MULTI_XZ: &str = "\
StorePath: /nix/store/zgskz2f0fkri867fsxak05azmwfqz3yv-multi-1.0\n\
URL: nar/07wvcanm4qbvsixl16nz8m0jjs2vk1kpazyjhk5aviv2ng53cpb1.nar.xz\n\
Compression: xz\n\
FileHash: sha256:07wvcanm4qbvsixl16nz8m0jjs2vk1kpazyjhk5aviv2ng53cpb1\n\
FileSize: 280\n\
NarHash: sha256:161ympnxh6sxa8bf03zdgs1gj15hp7nw4lisxkcidsh8sxiz3fjy\n\
NarSize: 320\n\
References: 0r2v93mqaf9d2zyqi8pgmyzmf879753y-top qa1w9gdfrba6jl2r57mb3c43863gqywp-hello.txt z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep zgskz2f0fkri867fsxak05azmwfqz3yv-multi-1.0\n\
Deriver: ggj4z343qqcgyhh4ni165b6aq63x0n8n-multi-1.0.drv\n\
Sig: test-1:agubJMGf/uZrxziISppDXNvNTJlsxG8fR7dU9jPnLNQFdONeeA6F+QjxTRIGQIs/GYRnnOXzbAzleAgfYozZDA==\n\
";

/// `builtins.toFile "hello.txt"`: content-addressed, so it has a CA line and no Deriver; signed.
pub const HELLO_CA: &str = "\
StorePath: /nix/store/qa1w9gdfrba6jl2r57mb3c43863gqywp-hello.txt\n\
URL: nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz\n\
Compression: xz\n\
FileHash: sha256:17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a\n\
FileSize: 128\n\
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n\
NarSize: 120\n\
References: \n\
Sig: test-1:UaoCDj4RAXEKnzDi2wSE3Q5+83swtwniFQAyk0NDCZxYfqXGrvc5refazu1wl4MVxW54Yr4VMjkOK45jHtA2CA==\n\
CA: text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq\n\
";

/// Every signed narinfo above; all carry a `test-1` signature by [`SECRET_KEY_FILE`].
pub const SIGNED: &[&str] = &[
    TOP_XZ, DEP_XZ, TOP_NONE, DEP_NONE, TOP_ZSTD, DEP_ZSTD, MULTI_XZ, HELLO_CA,
];
