//! The template as `scaler deploy` sends it. CloudFormation takes a template body of at most
//! 51,200 bytes (larger ones only from S3); the fleet template, with the comments and parameter
//! descriptions its readers need, is larger. So the body sent is the same template as compact
//! JSON: YAML's short-form tags written out (`!Ref x` as `{"Ref": "x"}`, `!Sub s` as
//! `{"Fn::Sub": s}`, `!GetAtt a.b` as `{"Fn::GetAtt": ["a", "b"]}`), without what only the
//! console shows (the parameter groups in `Metadata`, parameter and output descriptions). The
//! file in `infra/` stays the one to read and to upload by hand. Written here because the
//! conversion is CloudFormation's own convention, which no YAML or JSON crate knows.

use anyhow::{bail, Result};
use serde::ser::{Error as _, SerializeMap};
use serde::{Serialize, Serializer};
use serde_yaml::Value as Yaml;

/// CloudFormation's limit on a template body passed in the request.
pub(crate) const MAX_BODY_BYTES: usize = 51_200;

/// The compact JSON body of a parsed template, its keys in the template's order (moto, for one,
/// reads resources in the order they come).
pub(crate) fn compact(document: &Yaml) -> Result<String> {
    let mut document = document.clone();
    if let Some(top) = document.as_mapping_mut() {
        top.remove("Metadata");
        for section in ["Parameters", "Outputs"] {
            if let Some(entries) = top.get_mut(section).and_then(Yaml::as_mapping_mut) {
                for (_, entry) in entries.iter_mut() {
                    if let Some(entry) = entry.as_mapping_mut() {
                        entry.remove("Description");
                    }
                }
            }
        }
    }
    let body = serde_json::to_string(&LongForm(&document))?;
    if body.len() > MAX_BODY_BYTES {
        bail!(
            "the template is {} bytes even as compact JSON, over CloudFormation's {MAX_BODY_BYTES} for a body",
            body.len()
        );
    }
    Ok(body)
}

/// A YAML value serialized as JSON, with CloudFormation's short-form tags as their long forms.
struct LongForm<'a>(&'a Yaml);

impl Serialize for LongForm<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Yaml::Null => serializer.serialize_unit(),
            Yaml::Bool(flag) => serializer.serialize_bool(*flag),
            Yaml::Number(number) => number.serialize(serializer),
            Yaml::String(text) => serializer.serialize_str(text),
            Yaml::Sequence(items) => serializer.collect_seq(items.iter().map(LongForm)),
            Yaml::Mapping(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    let key = key.as_str().ok_or_else(|| {
                        S::Error::custom(format!("a key is not a string: {key:?}"))
                    })?;
                    map.serialize_entry(key, &LongForm(value))?;
                }
                map.end()
            }
            Yaml::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                let name = tag.trim_start_matches('!');
                let mut map = serializer.serialize_map(Some(1))?;
                match (name, &tagged.value) {
                    ("Ref" | "Condition", value) => map.serialize_entry(name, &LongForm(value))?,
                    ("GetAtt", Yaml::String(dotted)) => {
                        let parts: Vec<&str> = match dotted.split_once('.') {
                            Some((resource, attribute)) => vec![resource, attribute],
                            None => vec![dotted],
                        };
                        map.serialize_entry("Fn::GetAtt", &parts)?
                    }
                    (_, value) => map.serialize_entry(&format!("Fn::{name}"), &LongForm(value))?,
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as Json};

    #[test]
    fn short_forms_become_long_forms() {
        let yaml = "A: !Ref Name\nB: !GetAtt Role.Arn\nC: !Sub 'x-${AWS::Region}'\n\
                    D: !If [Cond, !Ref X, !Ref AWS::NoValue]\nE: !Select [0, !Split [',', !Ref L]]\n\
                    F: !Condition C1\nG: !GetAtt [Role, Arn]\nH: 900\nI: 'true'\nJ: false\n";
        let json: Json =
            serde_json::from_str(&compact(&serde_yaml::from_str(yaml).unwrap()).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({
                "A": {"Ref": "Name"},
                "B": {"Fn::GetAtt": ["Role", "Arn"]},
                "C": {"Fn::Sub": "x-${AWS::Region}"},
                "D": {"Fn::If": ["Cond", {"Ref": "X"}, {"Ref": "AWS::NoValue"}]},
                "E": {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "L"}]}]},
                "F": {"Condition": "C1"},
                "G": {"Fn::GetAtt": ["Role", "Arn"]},
                "H": 900,
                "I": "true",
                "J": false,
            })
        );
    }

    #[test]
    fn the_built_in_templates_fit_a_request_body_and_keep_their_meaning() {
        for template in [super::super::TEMPLATE, super::super::HUB_TEMPLATE] {
            assert!(template.len() > 20_000);
            let document: Yaml = serde_yaml::from_str(template).unwrap();
            let body = compact(&document).unwrap();
            assert!(body.len() <= MAX_BODY_BYTES, "{} bytes", body.len());
            let sent: Json = serde_json::from_str(&body).unwrap();
            let full: Json = serde_json::to_value(LongForm(&document)).unwrap();
            // In the template's order: the first resource sent is the first declared.
            let first = document["Resources"]
                .as_mapping()
                .unwrap()
                .keys()
                .next()
                .unwrap();
            let first = format!("\"Resources\":{{\"{}\"", first.as_str().unwrap());
            assert!(body.contains(&first), "{first}");
            // Everything but the console's words is sent as it is.
            assert_eq!(sent["Resources"], full["Resources"]);
            assert_eq!(sent["Conditions"], full["Conditions"]);
            assert!(sent.get("Metadata").is_none());
            for (name, parameter) in full["Parameters"].as_object().unwrap() {
                let mut expected = parameter.clone();
                expected.as_object_mut().unwrap().remove("Description");
                assert_eq!(sent["Parameters"][name], expected, "{name}");
            }
        }
        // The fleet template itself is over the limit: the reason for all of this.
        assert!(super::super::TEMPLATE.len() > MAX_BODY_BYTES);
    }

    #[test]
    fn a_template_too_big_even_compact_is_a_clear_error() {
        let big = format!(
            "Resources:\n  R:\n    Type: X\n    Properties: {{P: '{}'}}\n",
            "x".repeat(60_000)
        );
        let error = compact(&serde_yaml::from_str(&big).unwrap()).unwrap_err();
        assert!(error.to_string().contains("51200"), "{error}");
    }
}
