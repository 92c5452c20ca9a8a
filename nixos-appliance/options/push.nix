# services.nixcache.pushTokens: who may publish to the appliance with `nix copy --to` (issue 12). Each
# token's file is handed to the service with LoadCredential as `push-<name>` and rendered as one
# `push_tokens` entry pointing at the service's copy; the other push settings are `settings.push_*`
# (./settings-push.nix). Builders publish with services.nixcache-client.push (./client-push.nix).
{ config, lib, ... }:

let
  cfg = config.services.nixcache;
  nixcacheLib = import ../lib.nix { inherit lib; };
  nixcacheTypes = nixcacheLib.types;
  inherit (nixcacheLib) credentialsDir inStore;
  inherit (lib) mkOption types;

  token = types.submodule (
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = nixcacheTypes.pushTokenName;
          default = name;
          defaultText = lib.literalMD "the attribute name";
          readOnly = true;
          description = ''
            The token's name, its attribute name: 1 to 64 letters, digits, `.`, `_`, `-`. Shown in
            metrics and `/_status`; what the token pushed is recorded under the source `push:<name>`.
          '';
        };
        tokenFile = mkOption {
          type = nixcacheTypes.absolutePath;
          example = "/var/lib/nixcache-push/builder";
          description = ''
            File holding the token: one word of at least 16 characters (`head -c 32 /dev/urandom |
            base64`), root-only (mode 600). Handed to the service with LoadCredential; give it as a
            string, never in the Nix store. Builders put the same token in their netrc file.
          '';
        };
        paths = mkOption {
          type = types.listOf nixcacheTypes.namePattern;
          default = [ "*" ];
          example = [ "myproject-*" ];
          description = "Store-path names (the part after `<hash>-`) this token may publish; `*` matches any run of characters.";
        };
        quota = mkOption {
          type = types.nullOr nixcacheTypes.size;
          default = null;
          example = "20GiB";
          description = "Most bytes of NAR files this token may have stored at once. Null: only `settings.push_max_size` limits it.";
        };
        sign = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Sign this token's uploads that carry no signature by a `settings.push_trusted_keys` key with
            the appliance's key (needs `signingKeyFile`), so builders need no key of their own.
          '';
        };
      };
    }
  );

  tokens = lib.attrValues cfg.pushTokens;
in
{
  options.services.nixcache.pushTokens = mkOption {
    # The attribute names are checked by each token's `name`, which every use of a token reads.
    type = types.attrsOf token;
    default = { };
    example = lib.literalExpression ''
      {
        builder.tokenFile = "/var/lib/nixcache-push/builder";
        ci = {
          tokenFile = "/var/lib/nixcache-push/ci";
          paths = [ "myproject-*" ];
          quota = "20GiB";
          sign = true;
        };
      }
    '';
    description = ''
      Tokens allowed to publish to the appliance with `nix copy --to` (HTTP PUT), by name: the name
      is shown in metrics and `/_status`, and what a token pushed is recorded under the source
      `push:<name>` (and served only while the token is configured). Rendered as `push_tokens`.
      Empty: nobody may push.
    '';
  };

  config = lib.mkIf (cfg.enable && tokens != [ ]) {
    assertions = lib.concatMap (t: [
      {
        assertion = !inStore t.tokenFile;
        message = "services.nixcache.pushTokens.${t.name}.tokenFile is in the Nix store, which every local user can read: give the path of a root-only file, as a string.";
      }
      {
        assertion = !t.sign || cfg.signingKeyFile != null;
        message = "services.nixcache.pushTokens.${t.name}.sign needs services.nixcache.signingKeyFile: the appliance signs with it.";
      }
    ]) tokens;

    services.nixcache = {
      credentials = lib.listToAttrs (map (t: lib.nameValuePair "push-${t.name}" t.tokenFile) tokens);
      generatedSettings.push_tokens = map (t: {
        inherit (t)
          name
          paths
          quota
          sign
          ;
        token_file = "${credentialsDir}/push-${t.name}";
      }) tokens;
    };
  };
}
